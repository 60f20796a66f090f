/**
 * A network link a benchmark can shape: a network namespace joined to the
 * host by a veth pair (a /30), with a tc qdisc (e.g. `tbf rate 1gbit ...`)
 * on both ends. A server started inside (`ip netns exec <ns> ...`, e.g.
 * docker-registry with `netns`) is reached from the host at `nsIp`; what it
 * sends crosses the shaped veth. Needs root and iproute2.
 */
import { spawnSync } from 'node:child_process';

export interface ShapedLink {
  ns: string;
  hostIp: string;
  nsIp: string;
  /** replace the qdisc on both ends ('' = no shaping) */
  shape(qdisc: string): void;
  down(): void;
}

const sh = (cmd: string): { status: number | null; out: string } => {
  const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8' });
  return { status: r.status, out: (r.stdout ?? '') + (r.stderr ?? '') };
};

export interface LinkNames {
  /** namespace name */
  ns: string;
  /** veth names on the host and in the namespace (≤ 15 chars) */
  hostDev: string;
  nsDev: string;
  /** 10.a.b.0/30: host .1, namespace .2 */
  net: string;
}

function linkDown(n: LinkNames): void {
  sh(`ip netns pids ${n.ns} 2>/dev/null | xargs -r kill -9`);
  sh(`ip link del ${n.hostDev} 2>/dev/null`);
  sh(`ip netns del ${n.ns} 2>/dev/null`);
}

/** Set the link up with `qdisc` on both ends; a string saying why not (no root, no iproute2 …) on failure. */
export function linkUp(n: LinkNames, qdisc: string): ShapedLink | string {
  linkDown(n);
  const hostIp = `${n.net}.1`;
  const nsIp = `${n.net}.2`;
  const steps = [
    `ip netns add ${n.ns}`,
    `ip link add ${n.hostDev} type veth peer name ${n.nsDev}`,
    `ip link set ${n.nsDev} netns ${n.ns}`,
    `ip addr add ${hostIp}/30 dev ${n.hostDev}`,
    `ip link set ${n.hostDev} up`,
    `ip netns exec ${n.ns} ip addr add ${nsIp}/30 dev ${n.nsDev}`,
    `ip netns exec ${n.ns} ip link set ${n.nsDev} up`,
    `ip netns exec ${n.ns} ip link set lo up`,
  ];
  for (const s of steps) {
    const r = sh(s);
    if (r.status !== 0) { linkDown(n); return `${s}: ${r.out.trim()}`; }
  }
  const shape = (q: string): void => {
    for (const [pre, dev] of [['', n.hostDev], [`ip netns exec ${n.ns} `, n.nsDev]]) {
      sh(`${pre}tc qdisc del dev ${dev} root 2>/dev/null`);
      if (!q) continue;
      const r = sh(`${pre}tc qdisc add dev ${dev} root ${q}`);
      if (r.status !== 0) throw new Error(`tc qdisc add dev ${dev} root ${q}: ${r.out.trim()}`);
    }
  };
  try { shape(qdisc); } catch (e) { linkDown(n); return (e as Error).message; }
  return { ns: n.ns, hostIp, nsIp, shape, down: () => linkDown(n) };
}
