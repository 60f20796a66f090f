/** A one-line progress meter for long work; prints only when stderr is a TTY. */
export class Progress {
  private last = 0;
  private readonly start = Date.now();
  constructor(private readonly label: string, private readonly total: number) {}

  update(done: number): void {
    if (!process.stderr.isTTY) return;
    const now = Date.now();
    if (now - this.last < 200 && done < this.total) return;
    this.last = now;
    const pct = this.total > 0 ? Math.floor((done / this.total) * 100) : 100;
    const mb = (done / 1048576).toFixed(1);
    process.stderr.write(`\r${this.label}: ${pct}% (${mb} MiB, ${((now - this.start) / 1000).toFixed(1)}s)`);
  }

  done(): void {
    if (process.stderr.isTTY) process.stderr.write('\n');
  }
}
