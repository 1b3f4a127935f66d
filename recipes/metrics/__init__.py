"""groundvlm.recipes.metrics"""
