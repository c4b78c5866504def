// The text of a stream event too large to hold (SseParser's and the Gemini JSON-array reader's onOversized): an
// upstream produced it, so a meter counts it, but as it counts any event: the strings in it, not its JSON syntax,
// and not what is no text (base64 images and audio, signatures, ids). A cut event is valid JSON up to the cut; what
// is not JSON at all is counted as it came, as a small event's would be.
import { JsonScanner, SCAN_SKIP_TREE, SCAN_TEXT, type ScanPath } from './json-scan.ts';

/** Members whose strings are no generated text: media data, signatures, ids, names of things, metadata. */
const NOT_TEXT: ReadonlySet<string> = new Set([
  'data', 'b64_json', 'inlineData', 'inline_data', 'fileData', 'image_url', 'input_audio', 'audio', 'signature', 'thoughtSignature',
  'encrypted_content', 'mimeType', 'mime_type', 'id', 'object', 'model', 'modelVersion', 'responseId', 'system_fingerprint',
  'role', 'type', 'finishReason', 'finish_reason', 'stop_reason', 'usage', 'usageMetadata', 'logprobs', 'safetyRatings',
  'citationMetadata', 'groundingMetadata',
]);

function mode(path: ScanPath): number {
  const key = path[path.length - 1];
  return typeof key === 'string' && NOT_TEXT.has(key) ? SCAN_SKIP_TREE : SCAN_TEXT;
}

export function heldText(held: string): string {
  const at = held.search(/\S/);
  if (at === -1) return '';
  const c = held.charCodeAt(at);
  if (c !== 0x7b && c !== 0x5b) return held;
  let text = '';
  const scanner = new JsonScanner({ value: mode, raw: () => undefined, piece: (_p, t) => { text += t; } });
  scanner.push(Buffer.from(held, 'utf8'));
  scanner.end();
  // Not JSON after all: counted as it came.
  return scanner.broken ? held : text;
}
