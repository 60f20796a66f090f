/**
 * Image references as docker/distribution's `ParseDockerRef` reads them
 * (nydusify-snapshotter §1.1): `nginx` → `docker.io/library/nginx:latest`,
 * `host:5000/a/b@sha256:…`, `name:tag@digest`. The first path component is a
 * registry domain when it contains `.` or `:` or is `localhost`; Docker Hub
 * names get `library/` when they have one component, and the default tag is
 * `latest` when neither tag nor digest is given.
 *
 * Deliberate differences: a reference with both a tag and a digest keeps both
 * (the digest is what is resolved; upstream's ParseDockerRef drops the tag);
 * the registry host of `docker.io` (and `index.docker.io`) is
 * `registry-1.docker.io` for requests, and `https://index.docker.io/v1/` for
 * credential lookups (registryHost / credentialKey).
 */
import { einval } from '../common/errno';

export const DEFAULT_DOMAIN = 'docker.io';
export const DOCKER_HUB_HOST = 'registry-1.docker.io';
export const DOCKER_HUB_CREDENTIAL_KEY = 'https://index.docker.io/v1/';
const MAX_REFERENCE = 4096;

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$/;
const DOMAIN = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::\d{1,5})?$/;

export interface Reference {
  /** registry domain as named (docker.io for Docker Hub) */
  domain: string;
  /** repository path inside the registry (`library/nginx`) */
  repository: string;
  tag?: string;
  digest?: string;
}

/** Parse and normalise a reference (module doc); EINVAL when malformed. */
export function parseReference(input: string): Reference {
  const s = input.trim();
  if (!s || s.length > MAX_REFERENCE) throw einval(`invalid reference '${input.slice(0, 200)}'`);
  let rest = s;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw einval(`invalid digest in reference '${s}'`);
    if (digest.startsWith('sha256:') && !/^sha256:[a-f0-9]{64}$/.test(digest)) throw einval(`invalid sha256 digest in reference '${s}'`);
  }
  let tag: string | undefined;
  const slash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > slash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw einval(`invalid tag in reference '${s}'`);
  }
  let domain = DEFAULT_DOMAIN;
  let repository = rest;
  const first = rest.indexOf('/');
  if (first >= 0) {
    const head = rest.slice(0, first);
    if (head.includes('.') || head.includes(':') || head === 'localhost' || head !== head.toLowerCase()) {
      domain = head;
      repository = rest.slice(first + 1);
    }
  }
  if (!DOMAIN.test(domain)) throw einval(`invalid registry domain '${domain}' in reference '${s}'`);
  if (domain === 'index.docker.io') domain = DEFAULT_DOMAIN;
  if (domain === DEFAULT_DOMAIN && !repository.includes('/')) repository = `library/${repository}`;
  if (!repository || repository.length > 255 || !repository.split('/').every((c) => COMPONENT.test(c))) {
    throw einval(`invalid repository name '${repository}' in reference '${s}' (lowercase components only)`);
  }
  if (!tag && !digest) tag = 'latest';
  return { domain, repository, tag, digest };
}

/** `domain/repository[:tag][@digest]`. */
export function formatReference(r: Reference): string {
  return `${r.domain}/${r.repository}${r.tag ? `:${r.tag}` : ''}${r.digest ? `@${r.digest}` : ''}`;
}

/** The same repository with another tag (digest dropped). */
export function withTag(r: Reference, tag: string): Reference {
  if (!TAG.test(tag)) throw einval(`invalid tag '${tag}'`);
  return { domain: r.domain, repository: r.repository, tag };
}

/** The host requests go to: `docker.io` → `registry-1.docker.io`. */
export function registryHost(domain: string): string {
  return domain === DEFAULT_DOMAIN || domain === 'index.docker.io' ? DOCKER_HUB_HOST : domain;
}

/** The key docker's config.json files credentials of `domain` under. */
export function credentialKey(domain: string): string {
  return domain === DEFAULT_DOMAIN || domain === DOCKER_HUB_HOST || domain === 'index.docker.io' ? DOCKER_HUB_CREDENTIAL_KEY : domain;
}

/** What the manifest request names: the digest when there is one, else the tag. */
export const referenceObject = (r: Reference): string => r.digest ?? r.tag ?? 'latest';
