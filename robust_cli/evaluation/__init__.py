"""robust_cli.evaluation"""
