"""Model plug-ins (generators and learners). Heavy dependencies are imported only inside them."""
