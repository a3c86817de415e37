"""Output: tables with kubectl's columns (columns, table), -o json|yaml|name (structured)."""
