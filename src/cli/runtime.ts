// The runtime `sluice start` accepts. uWebSockets.js ships one prebuilt binary per Node ABI; the one in use
// (uws-js-unofficial 20.30.0) has ABI 115 (Node 20) built against glibc 2.27. On any other runtime its loader
// silently falls back to a slow pure-Node server, so start-up refuses instead and says why.

export const REQUIRED_NODE_MAJOR = 20;
export const REQUIRED_NODE_ABI = '115';
export const MIN_GLIBC: readonly [number, number] = [2, 27];

export interface RuntimeFacts {
  readonly nodeVersion: string;
  readonly abi: string;
  readonly platform: NodeJS.Platform;
  /** `process.report`'s glibcVersionRuntime; undefined on musl (Alpine) and non-Linux systems. */
  readonly glibc: string | undefined;
}

export function currentRuntime(): RuntimeFacts {
  let glibc: string | undefined;
  if (process.platform === 'linux') {
    const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
    glibc = header?.glibcVersionRuntime;
  }
  return { nodeVersion: process.versions.node, abi: process.versions.modules, platform: process.platform, glibc };
}

/** Why this runtime cannot run the gateway, or undefined when it can. */
export function runtimeProblem(rt: RuntimeFacts = currentRuntime()): string | undefined {
  const hint = 'see "Runtime constraint" in docs/operations.md';
  if (rt.abi !== REQUIRED_NODE_ABI) {
    return `sluice needs Node.js ${REQUIRED_NODE_MAJOR} (ABI ${REQUIRED_NODE_ABI}); this is Node.js ${rt.nodeVersion} (ABI ${rt.abi}). ` +
      `The bundled uWebSockets.js binary loads only on Node ${REQUIRED_NODE_MAJOR}; ${hint}`;
  }
  if (rt.platform === 'linux') {
    if (rt.glibc === undefined) {
      return `sluice needs glibc >= ${MIN_GLIBC.join('.')} (Debian 10+, Ubuntu 18.04+, RHEL 8+); this Linux has none (musl/Alpine?). ${hint}`;
    }
    const [maj = 0, min = 0] = rt.glibc.split('.').map(Number);
    if (maj < MIN_GLIBC[0] || (maj === MIN_GLIBC[0] && min < MIN_GLIBC[1])) {
      return `sluice needs glibc >= ${MIN_GLIBC.join('.')}; this system has glibc ${rt.glibc}. ${hint}`;
    }
  }
  return undefined;
}
