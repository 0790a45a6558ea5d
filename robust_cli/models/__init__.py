"""robust_cli.models"""
