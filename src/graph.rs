//! Dependency graphs over indexes: `edges[i]` lists what `i` needs first. Iterative
//! throughout, so a hostile config with a 100,000-long chain cannot overflow the stack.

use std::collections::HashSet;

/// Groups of nodes that need each other (strongly connected components with more than
/// one member, or a node that needs itself), each in an order that follows its edges.
pub fn cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next = 0;
    let mut found = Vec::new();
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut child)) = work.last_mut() {
            if let Some(&w) = edges[v].get(*child) {
                *child += 1;
                if w >= n {
                    continue;
                }
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 || edges[v].contains(&v) {
                    found.push(walk_order(edges, &component));
                }
            }
        }
    }
    found.sort();
    found
}

/// The members of a component, starting at the smallest, in the order a walk along the
/// edges first reaches them.
fn walk_order(edges: &[Vec<usize>], component: &[usize]) -> Vec<usize> {
    let members: HashSet<usize> = component.iter().copied().collect();
    let mut sorted = component.to_vec();
    sorted.sort_unstable();
    let mut seen = HashSet::new();
    let mut order = Vec::with_capacity(component.len());
    for &start in &sorted {
        if !seen.insert(start) {
            continue;
        }
        order.push(start);
        let mut v = start;
        while let Some(&w) = edges[v]
            .iter()
            .find(|w| members.contains(w) && !seen.contains(*w))
        {
            seen.insert(w);
            order.push(w);
            v = w;
        }
    }
    order
}

/// Topological layers: layer 0 needs nothing, layer k needs only earlier layers; nodes in
/// one layer can run in parallel. `Err` holds the cycles when there are any.
pub fn layers(edges: &[Vec<usize>]) -> Result<Vec<Vec<usize>>, Vec<Vec<usize>>> {
    let n = edges.len();
    let mut dependents = vec![Vec::new(); n];
    let mut waiting = vec![0usize; n];
    for (i, deps) in edges.iter().enumerate() {
        let mut unique = deps.clone();
        unique.sort_unstable();
        unique.dedup();
        for d in unique {
            dependents[d].push(i);
            waiting[i] += 1;
        }
    }
    let mut current: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut out = Vec::new();
    let mut placed = 0;
    while !current.is_empty() {
        placed += current.len();
        let mut next = Vec::new();
        for &i in &current {
            for &j in &dependents[i] {
                waiting[j] -= 1;
                if waiting[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        out.push(current);
        current = next;
    }
    if placed < n {
        Err(cycles(edges))
    } else {
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_put_independent_nodes_together() {
        let edges = vec![vec![], vec![0], vec![0], vec![1, 2]];
        assert_eq!(layers(&edges), Ok(vec![vec![0], vec![1, 2], vec![3]]));
    }

    #[test]
    fn cycles_name_every_member_in_edge_order() {
        let edges = vec![vec![1], vec![2], vec![0], vec![3], vec![]];
        assert_eq!(cycles(&edges), vec![vec![0, 1, 2], vec![3]]);
        assert!(layers(&edges).is_err());
    }

    #[test]
    fn long_chains_do_not_overflow() {
        let n = 200_000;
        let mut edges: Vec<Vec<usize>> = (0..n)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        assert_eq!(layers(&edges).map(|l| l.len()), Ok(n));
        edges[0] = vec![n - 1];
        assert_eq!(cycles(&edges)[0].len(), n);
    }
}
