"""robustcompress.experiments"""
