"""fedmammo: multi-centre and federated learning on screening mammograms, on Flower."""
