// Attempt order for ai-proxy-multi: priority groups from highest to lowest; inside a group the first pick is
// smooth weighted round-robin (nginx's algorithm: spreads picks evenly, e.g. 8:2 gives A A A A B A A A A B),
// and the rest of the group follows by weight, so a fallback inside the group is deterministic.
// A group whose weights are all 0 is treated as equal weights (the seeds use weight 0 with priorities).

interface Member<T> {
  readonly item: T;
  readonly weight: number;
  current: number;
}

interface Group<T> {
  readonly members: Member<T>[];
  readonly total: number;
}

export class InstancePicker<T extends { readonly weight: number; readonly priority: number }> {
  private readonly groups: Group<T>[];
  readonly size: number;

  constructor(items: readonly T[]) {
    const byPriority = new Map<number, T[]>();
    for (const it of items) {
      const g = byPriority.get(it.priority);
      if (g === undefined) byPriority.set(it.priority, [it]); else g.push(it);
    }
    const priorities = [...byPriority.keys()].sort((a, b) => b - a);
    this.groups = priorities.map((p) => {
      const list = byPriority.get(p)!;
      const allZero = list.every((i) => i.weight === 0);
      const members = list.map((item) => ({ item, weight: allZero ? 1 : item.weight, current: 0 }));
      return { members, total: members.reduce((s, m) => s + m.weight, 0) };
    });
    this.size = items.length;
  }

  /** The order in which to try instances for one request. */
  order(): T[] {
    const out: T[] = [];
    for (const g of this.groups) {
      if (g.members.length === 1) { out.push(g.members[0]!.item); continue; }
      const first = g.total > 0 ? this.pick(g) : undefined;
      if (first !== undefined) out.push(first.item);
      const rest = g.members.filter((m) => m !== first).sort((a, b) => b.weight - a.weight);
      for (const m of rest) out.push(m.item);
    }
    return out;
  }

  private pick(g: Group<T>): Member<T> | undefined {
    let best: Member<T> | undefined;
    for (const m of g.members) {
      if (m.weight <= 0) continue;
      m.current += m.weight;
      if (best === undefined || m.current > best.current) best = m;
    }
    if (best !== undefined) best.current -= g.total;
    return best;
  }
}
