"""groundvlm.recipes.data"""
