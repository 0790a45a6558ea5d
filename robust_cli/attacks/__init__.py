"""robust_cli.attacks"""
