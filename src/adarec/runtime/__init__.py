"""The runtime layer, at the bottom of adarec: process group, seeding, logging, checkpoint files.

Every package may import it; it imports nothing of adarec but ``errors`` and ``io``.
"""
