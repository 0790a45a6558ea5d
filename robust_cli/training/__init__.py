"""robust_cli.training"""
