"""A correlation id's executions as a tree: each execution under the one whose event started it."""

from dataclasses import dataclass, field

from .models import Execution

MAX_NODES = 500  # a page, not a dump: the API's GET /fx/cid/<cid> lists every execution


@dataclass
class ChainNode:
    execution: Execution
    children: list["ChainNode"] = field(default_factory=list)


@dataclass(frozen=True)
class Chain:
    roots: list[ChainNode]
    nodes: list[ChainNode]
    truncated: bool


def chain_of(execution: Execution) -> Chain:
    """The tree of `execution`'s correlation id, in time order. An execution whose parent is not in the chain
    (another correlation id, deleted, or past the first MAX_NODES) is shown as a root."""
    executions = list(
        Execution.objects.filter(correlation_id=execution.correlation_id)
        .select_related("package", "trigger_event")
        .order_by("created_at")[: MAX_NODES + 1]
    )
    truncated = len(executions) > MAX_NODES
    nodes = {e.pk: ChainNode(e) for e in executions[:MAX_NODES]}
    roots = []
    for node in nodes.values():
        parent = nodes.get(node.execution.parent_execution_id)
        (parent.children if parent else roots).append(node)
    return Chain(roots, list(nodes.values()), truncated)
