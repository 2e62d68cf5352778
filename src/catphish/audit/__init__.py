"""Site-side privacy audits: memorisation, membership inference, nearest-neighbour screens."""
