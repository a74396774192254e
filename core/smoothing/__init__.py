"""The smoothing layer: bounds, Monte-Carlo sampling, the expectations of Cullen24, the certification loop, results."""
