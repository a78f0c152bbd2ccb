"""Shared plumbing every stage uses: errors, atomic writes, strict JSON (jsonio), resource limits,
checked image reading, labels, run logs."""
