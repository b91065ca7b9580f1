"""The least-privilege IAM policies each config needs (--print-iam-policy)."""
