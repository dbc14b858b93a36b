"""robustcompress.training"""
