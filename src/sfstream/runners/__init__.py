"""Process lifecycles: the long-running service (Fargate) and the Lambda handler."""
