/** An insertion-ordered Map that evicts its oldest entry beyond `limit` entries (a cheap cache). */
export class BoundedMap<K, V> extends Map<K, V> {
  constructor(private readonly limit: number) { super(); }

  override set(k: K, v: V): this {
    if (!this.has(k) && this.size >= this.limit) this.delete(this.keys().next().value as K);
    return super.set(k, v);
  }
}
