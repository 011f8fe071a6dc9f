from peft._internal import internal

BufferDict = internal("BufferDict")
