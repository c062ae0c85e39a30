import LMCore
