"""Checks before spending money: tools, credentials, offerings, quota. Each fails with one
actionable line (PreflightError / MissingTool) and creates nothing."""
