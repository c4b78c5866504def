// Applies Redis replies in the order their commands were sent, one lane per connection.
//
// Redis answers the commands of one connection in order, but the promise continuations that consume the
// replies do not run in that order: a one-command DECRBY's `.then` is a few microtask hops shallower than a
// pipeline awaited through Promise.all, so when both replies arrive in one socket read the newer reply is
// applied first, and the older one then overwrites the view with a stale total. The store's view ("totals as
// of the latest reply, plus own deltas Redis has not answered yet") is right only when replies are applied
// in send order; every command of the store therefore goes through a lane that runs its `apply` callback
// synchronously, in send order, as soon as it and every earlier command of the lane have their outcome.
import { classifyError, type PortReply, type RedisErrorKind } from './port.ts';

export type RemoteOutcome = { ok: true; replies: PortReply[] } | { ok: false; kind: RedisErrorKind };

interface Entry {
  outcome: RemoteOutcome | undefined;
  readonly apply: (out: RemoteOutcome) => void;
}

export class ReplyLanes {
  private readonly lanes = new Map<string, Entry[]>();

  /**
   * Runs `exec` (which sends the pipeline) now; once its outcome and those of every earlier command on `lane`
   * are known, calls `apply` with it, in send order, and resolves with what `apply` returned.
   */
  send<T>(lane: string, exec: () => Promise<PortReply[]>, apply: (out: RemoteOutcome) => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const entry: Entry = {
        outcome: undefined,
        apply: (out) => {
          try {
            resolve(apply(out));
          } catch (err) {
            reject(err);
          }
        },
      };
      let queue = this.lanes.get(lane);
      if (queue === undefined) {
        queue = [];
        this.lanes.set(lane, queue);
      }
      queue.push(entry);
      let sent: Promise<PortReply[]>;
      try {
        sent = exec();
      } catch (err) {
        sent = Promise.reject(err);
      }
      sent.then(
        (replies) => this.settle(lane, entry, { ok: true, replies }),
        (err: unknown) => this.settle(lane, entry, { ok: false, kind: classifyError(err) }),
      );
    });
  }

  private settle(lane: string, entry: Entry, outcome: RemoteOutcome): void {
    entry.outcome = outcome;
    const queue = this.lanes.get(lane);
    if (queue === undefined) return;
    while (queue.length > 0 && queue[0]!.outcome !== undefined) {
      const head = queue.shift()!;
      head.apply(head.outcome!);
    }
    if (queue.length === 0 && this.lanes.get(lane) === queue) this.lanes.delete(lane);
  }
}
