// Command-line options of the benches: `--name value` and bare `--flag`.
const argv = process.argv.slice(2);

/** The value after `name`, or `def` when absent. */
export const opt = (name: string, def: string): string => {
  const i = argv.indexOf(name);
  return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1]! : def;
};

/** Whether the bare flag `name` was given. */
export const flag = (name: string): boolean => argv.includes(name);
