"""edge-agent: a store-and-forward agent for cameras and sensors on the edge."""

__version__ = "0.1.0"
