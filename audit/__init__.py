"""The auditor's tools: verify audit logs and report on privacy budgets, independently
of the code that wrote them (audit -> common only)."""
