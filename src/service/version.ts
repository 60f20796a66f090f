/** Version block of DaemonInfo (five strings, kata-contract §0 point 3). */
export const VERSION = {
  package_ver: 'v2.4.4-ts',
  git_commit: 'unknown',
  build_time: 'unknown',
  profile: 'release',
  rustc: 'node ' + process.version,
};
