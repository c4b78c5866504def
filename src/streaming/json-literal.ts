// Shared by the indexOf fast paths that read one JSON string literal out of a frame without JSON.parse.

/** Index of the quote closing the string literal that opens at `open`, or -1. */
export function closingQuote(s: string, open: number): number {
  let j = open + 1;
  for (;;) {
    j = s.indexOf('"', j);
    if (j === -1) return -1;
    let k = j - 1;
    while (s.charCodeAt(k) === 0x5c) k--;
    // An even number of backslashes before the quote: it is not escaped.
    if (((j - 1 - k) & 1) === 0) return j;
    j++;
  }
}
