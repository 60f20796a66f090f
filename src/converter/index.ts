/** src/converter: nydusify's convert, check and copy (layer 3: common, storage, rafs, remote). */
export * from './bootstrap-layer';
export * from './check';
export * from './convert';
export * from './copy';
export * from './layer';
export * from './manifest';
