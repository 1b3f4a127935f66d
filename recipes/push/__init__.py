"""groundvlm.recipes.push"""
