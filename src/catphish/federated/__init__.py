"""Flower apps (client/server), strategies, partitions and communication accounting."""
