"""Shared plumbing every stage uses: errors, atomic writes, image reading, labels, run logs."""
