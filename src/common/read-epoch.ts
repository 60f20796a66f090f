/**
 * Read epochs: when may memory that readers were handed be used again?
 *
 * A transport takes a token when a request arrives (enterRead) and gives it
 * back once the reply has been written out (exitRead), so every buffer the
 * request was handed has been copied by then. Memory retired at epoch E
 * (currentEpoch() at the time) may be reused once quiescent(E): every token
 * taken before E has been given back. A token taken later cannot have seen
 * the memory through the request that was answered from it; whoever can hand
 * the memory out to new requests (a cache) must hold it by other means
 * (storage/blob/chunk-arena.ts: references).
 *
 * Tokens are numbers in arrival order; the oldest one still out is tracked
 * lazily, so entering, leaving and asking are O(1) amortized. A token never
 * given back (a request stuck forever) only stops reuse: the arena then
 * falls back to fresh buffers.
 */
let next = 1;
/** every token below this has been given back */
let oldest = 1;
const out = new Set<number>();

/** A request starts: its token (give it back with exitRead once its reply is out). */
export function enterRead(): number {
  const t = next++;
  out.add(t);
  return t;
}

/** The request holding `token` is done with every buffer it was handed. */
export function exitRead(token: number): void {
  if (!out.delete(token)) return;
  if (token === oldest) {
    while (oldest < next && !out.has(oldest)) oldest++;
  }
}

/** The epoch memory is retired at now: the first token not yet taken. */
export function currentEpoch(): number {
  return next;
}

/** Whether every token taken before `epoch` has been given back. */
export function quiescent(epoch: number): boolean {
  return oldest >= epoch;
}

/** Tokens still out (tests, metrics). */
export function readsInFlight(): number {
  return out.size;
}
