"""robustcompress.metrics"""
