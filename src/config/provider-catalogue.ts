// The provider names config validation accepts, and the per-instance checks of their modules. Provider
// modules live above config in the layers (src/providers/), so they register here when the registry is
// imported (src/providers/registry.ts); the CLI, the app and the snapshot builder all import it. Until one is
// registered, any non-empty name passes validation and resolving the instance at snapshot build reports it.
import type { InstanceConfig } from './types.ts';

export interface ProviderCatalogue {
  readonly names: readonly string[];
  /** The message for a name no module serves. */
  unsupported(name: string): string;
  /** Issues resolving the instance (paths relative to the instance, e.g. `override.endpoint`). */
  check(inst: InstanceConfig): readonly { readonly path: string; readonly message: string }[];
}

let catalogue: ProviderCatalogue | undefined;

export function registerProviderCatalogue(c: ProviderCatalogue): void {
  catalogue = c;
}

export function providerCatalogue(): ProviderCatalogue | undefined {
  return catalogue;
}
