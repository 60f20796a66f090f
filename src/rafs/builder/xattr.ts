/** Xattr name rules shared by the builders (rafs-spec §1.6). */
export const XATTR_PREFIXES = ['user.', 'security.', 'trusted.', 'system.posix_acl_access', 'system.posix_acl_default'];

export function isAllowedXattr(name: string): boolean {
  return name.length > 0 && Buffer.byteLength(name) <= 255 && XATTR_PREFIXES.some((p) => name.startsWith(p));
}
