"""groundvlm.recipes.convert"""
