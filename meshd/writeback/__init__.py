"""Write-back: writes acknowledged once durable on the node, uploaded in the background
(docs/SEMANTICS.md, "Write-back"; ARCHITECTURE.md, the write path)."""

from meshd.writeback.journal import Entry, Journal, is_pending_version
from meshd.writeback.service import Budget, EtcdRegistry, Registry, Writeback

__all__ = ["Budget", "Entry", "EtcdRegistry", "Journal", "Registry", "Writeback", "is_pending_version"]
