"""Video generation metrics: FVD, KVD and IS on Kinetics-400 I3D features."""
