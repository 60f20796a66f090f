/**
 * Daemon state machine (rafs-spec §8.2, upstream service/src/daemon.rs):
 *   INIT    --Mount-->    READY
 *   INIT    --Takeover--> READY   (restore from a supervisor)
 *   READY   --Start-->    RUNNING
 *   RUNNING --Stop-->     READY
 *   READY   --Stop-->     STOPPED
 *   READY   --Exit-->     STOPPED
 * Any other (state, event) pair is an UnexpectedEvent (HTTP 400).
 * `state` as served by GET /api/v1/daemon: INIT, READY, RUNNING, STOPPED
 * (UNKNOWN is never produced).
 */
export type DaemonState = 'INIT' | 'READY' | 'RUNNING' | 'STOPPED' | 'UNKNOWN';
export type DaemonEvent = 'Mount' | 'Takeover' | 'Start' | 'Stop' | 'Exit';

const TRANSITIONS: Record<string, DaemonState> = {
  'INIT:Mount': 'READY',
  'INIT:Takeover': 'READY',
  'READY:Start': 'RUNNING',
  'RUNNING:Stop': 'READY',
  'READY:Stop': 'STOPPED',
  'READY:Exit': 'STOPPED',
};

export class UnexpectedEvent extends Error {
  constructor(readonly state: DaemonState, readonly event: DaemonEvent) {
    super(`${event} in state ${state}`);
  }
}

export class DaemonStateMachine {
  private current: DaemonState = 'INIT';
  private readonly listeners: Array<(s: DaemonState) => void> = [];

  get state(): DaemonState {
    return this.current;
  }

  /** Apply `event`; throws UnexpectedEvent when it is not allowed in the current state. */
  fire(event: DaemonEvent): DaemonState {
    const next = TRANSITIONS[`${this.current}:${event}`];
    if (!next) throw new UnexpectedEvent(this.current, event);
    this.current = next;
    for (const l of this.listeners) l(next);
    return next;
  }

  /** Can `event` be applied now? */
  can(event: DaemonEvent): boolean {
    return TRANSITIONS[`${this.current}:${event}`] !== undefined;
  }

  /** Stop from RUNNING or READY and end in STOPPED (Stop, then Exit when needed). */
  shutdown(): void {
    if (this.current === 'RUNNING') this.fire('Stop');
    if (this.current === 'READY') this.fire('Exit');
    else if (this.current === 'INIT') this.current = 'STOPPED';
  }

  onChange(fn: (s: DaemonState) => void): void {
    this.listeners.push(fn);
  }
}
