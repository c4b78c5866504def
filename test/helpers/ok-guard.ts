// A Guard (the HTTP/1.x front end alone, no gateway) whose every request is answered 200 `ok`, for tests of what
// the guard does with connections: limits, backlog, refusals.
import { Guard, type GuardLimits } from '../../src/frontend/http1-guard.ts';
import { NetResponse } from '../../src/frontend/net-response.ts';

export function okGuard(limits: GuardLimits, onReject?: (reason: string) => void): Guard {
  return new Guard({
    limits,
    serve: {
      serve(wire, head) {
        const res = new NetResponse(wire, head.method === 'HEAD', head.minor === 0, head.keepAlive, false, undefined, limits.client_send_timeout_ms);
        res.send(200, [['content-type', 'text/plain']], 'ok');
        return res;
      },
    },
    onReject,
  });
}
