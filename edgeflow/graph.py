"""The wiring of a topology as Mermaid (renders in GitHub and most wikis) or Graphviz DOT."""

from __future__ import annotations

from .topology import Topology

__all__ = ["to_dot", "to_mermaid"]

_SHAPES = {"source": ("([", "])"), "operator": ("[", "]"), "sink": ("[(", ")]")}


def _id(name: str) -> str:
    return "n_" + "".join(c if c.isalnum() else "_" for c in name)


def to_mermaid(topo: Topology) -> str:
    lines = ["flowchart LR"]
    for a in topo.actors.values():
        left, right = _SHAPES[a.kind]
        lines.append(f'    {_id(a.name)}{left}"{a.name}<br/>{a.kind}: {a.type}"{right}')
    for a in topo.actors.values():
        for inp in a.inputs:
            lines.append(f"    {_id(inp)} --> {_id(a.name)}")
        if a.dead_letter:
            lines.append(f"    {_id(a.name)} -. dead letters .-> {_id(a.dead_letter)}")
    return "\n".join(lines)


def to_dot(topo: Topology) -> str:
    shapes = {"source": "ellipse", "operator": "box", "sink": "cylinder"}
    lines = ["digraph edgeflow {", "    rankdir=LR;"]
    for a in topo.actors.values():
        lines.append(f'    "{a.name}" [shape={shapes[a.kind]}, label="{a.name}\\n{a.kind}: {a.type}"];')
    for a in topo.actors.values():
        for inp in a.inputs:
            lines.append(f'    "{inp}" -> "{a.name}";')
        if a.dead_letter:
            lines.append(f'    "{a.name}" -> "{a.dead_letter}" [style=dashed, label="dead letters"];')
    lines.append("}")
    return "\n".join(lines)
