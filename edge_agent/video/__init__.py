"""Video: H.264 bitstream handling, the Matroska (MKV) framing Kinesis Video Streams
takes, and the PutMedia acknowledgement stream."""
