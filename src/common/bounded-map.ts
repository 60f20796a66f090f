/**
 * An insertion-ordered Map that evicts its oldest entries beyond `limit`
 * entries (a cheap cache) and, when given a `weight`, beyond `maxWeight` in
 * total: a few huge values (a chunk list of millions of entries, a directory
 * listing) cannot take what thousands of small ones would be allowed. A value
 * heavier than `maxWeight` on its own is not kept at all.
 */
export interface BoundedMapOptions<V> {
  weight: (v: V) => number;
  maxWeight: number;
}

export class BoundedMap<K, V> extends Map<K, V> {
  private total = 0;

  constructor(private readonly limit: number, private readonly weighed?: BoundedMapOptions<V>) { super(); }

  /** Sum of the weights of the values held (0 without a weight function). */
  get weight(): number {
    return this.total;
  }

  override set(k: K, v: V): this {
    const w = this.weighed;
    if (w === undefined) {
      if (!this.has(k) && this.size >= this.limit) this.delete(this.keys().next().value as K);
      return super.set(k, v);
    }
    this.delete(k);
    const vw = w.weight(v);
    if (vw > w.maxWeight) return this;
    while (this.size > 0 && (this.size >= this.limit || this.total + vw > w.maxWeight)) this.delete(this.keys().next().value as K);
    this.total += vw;
    return super.set(k, v);
  }

  override delete(k: K): boolean {
    const w = this.weighed;
    if (w !== undefined && super.has(k)) this.total -= w.weight(super.get(k) as V);
    return super.delete(k);
  }

  override clear(): void {
    this.total = 0;
    super.clear();
  }
}
