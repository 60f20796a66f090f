/**
 * API errors: an HTTP status plus the upstream-style Debug text served as
 * `{"code":"UNDEFINED","message":"<text>"}` (rafs-spec §8).
 */
export class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** Rust `{:?}` of a string: quoted, with `"` and `\` escaped. */
export const dbg = (s: string): string => JSON.stringify(s);

export const noRoute = (): ApiError => new ApiError(404, 'NoRoute');
export const badRequest = (): ApiError => new ApiError(400, 'BadRequest');
export const queryString = (msg: string): ApiError => new ApiError(400, `QueryString(${dbg(msg)})`);
export const parseBody = (msg: string): ApiError => new ApiError(400, `ParseBody(Error(${dbg(msg)}, line: 1, column: 1))`);
/** A daemon-side failure wrapped as upstream: e.g. Mount(MountFilesystem(Other("…"))) → 500 */
export const other = (wrap: string, msg: string, status = 500): ApiError => new ApiError(status, wrap.replace('{}', `Other(${dbg(msg)})`));
