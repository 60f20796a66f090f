/**
 * What a device implements to be served over vhost-user (rust-vmm
 * vhost-user-backend `VhostUserBackend`): its queue count and size, the
 * virtio features it offers, and what to do when a queue is kicked. Sockets,
 * memory mapping, ring setup and notifications belong to the framework.
 */
import type { Vring } from './vring';

export interface VhostUserBackend {
  /** number of virtqueues (GET_QUEUE_NUM) */
  readonly numQueues: number;
  /** largest SET_VRING_NUM accepted (a power of 2 ≤ 32768) */
  readonly maxQueueSize: number;
  /** virtio feature bits offered (VHOST_USER_F_PROTOCOL_FEATURES is added by the handler) */
  features(): bigint;
  /** protocol features the device allows (masked with what the handler implements); default all */
  protocolFeatures?(): bigint;
  /** the frontend acknowledged these virtio features */
  setFeatures?(features: bigint): void;
  /**
   * Queue `vring.index` was kicked or enabled: take chains with `vring.pop()`
   * and finish each with `vring.complete(chain, len)`. Runs on the main loop;
   * must not throw.
   */
  handleQueueEvent(vring: Vring): void;
  /** the connection ended (or RESET_DEVICE): forget per-connection state */
  reset?(): void;
}
