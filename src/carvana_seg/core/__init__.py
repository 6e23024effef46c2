"""Small stable helpers every stage shares: image/mask I/O, RLE, Dice, binarisation, the Kaggle layout."""
